"""HTTP entrypoints: one router per resource; they only translate HTTP to handler calls."""
