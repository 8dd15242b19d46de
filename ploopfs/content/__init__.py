"""What a virtual disk holds: partition tables, and the filesystems in them, found and analysed
through a registry of analysers (docs/architecture.md, "content/")."""
