"""stylefu.plugin: the GIMP side (worker bridge, installer, GIMP 3 and GIMP 2.10 plug-ins)."""
