"""Map the repository's folders onto the ``labfleet.<part>`` import names.

The folders follow the deployment layout (``services/<name>``, ``shared``, ``infra``),
while code imports ``labfleet.shared``, ``labfleet.scheduler`` and so on; nothing
installs a top-level ``shared`` or ``services`` package.
"""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
ROOTS = {
    "labfleet.shared": "shared",
    "labfleet.cli": "cli",
    "labfleet.embedded": "infra/embedded",
    "labfleet.lab": "infra/lab",
}
for service in sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()):
    ROOTS[f"labfleet.{service}"] = f"services/{service}"

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, folder in ROOTS.items():
    base = ROOT / folder
    if not (base / "__init__.py").exists():
        continue
    package_dir[name] = folder
    for init in sorted(base.rglob("__init__.py")):
        rel = init.parent.relative_to(base)
        packages.append(".".join([name, *rel.parts]) if rel.parts else name)

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={name: ["*.html", "*.js", "*.css", "*.ini", "*.mako", "templates/*", "static/*",
                         # htmx and Swagger UI, fetched from npm by infra/setup.sh (and
                         # the image's build)
                         "static/vendor/*.js", "static/vendor/*.css",
                         "**/*.sql", "*.json", "*.yaml", "*.sh", "*.c", "*.config",
                         # Alembic's env and revisions sit in folders without __init__.py;
                         # a non-editable install (the container image) needs them too
                         "alembic/*.py", "alembic/*.mako", "migrations/*.py"]
                  for name in packages},
    include_package_data=True,
)
