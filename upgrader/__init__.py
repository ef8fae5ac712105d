"""upgrader: twin/snapshot upgrades of pet VMs."""
__version__ = "0.1.0"
