"""The deployer: puts a build on a QEMU host and proves that it boots.

On ``env.allocated`` it sends the build's kernel, initrd and rootfs to the host's
content-addressed cache (SFTP over the pooled SSH connection, checked with ``sha256sum``
there), defines a libvirt domain over ``qemu+ssh`` with the host's pinned key, starts it
paused, attaches the serial console, resumes it and reads the console until the boot
marker (or a login prompt) or a failure: kernel panic, Oops, a reset loop, a timeout.
It owns environments and their deployments (schema ``deployer``) and answers
``env.cmd.get|list|release|redeploy|rollback``.
"""
