"""The data layer: the HDF5 artifact format (``format``, ``kinds``, ``reader``, ``writer``,
``linked``), dataset layouts (``datasets``), labels in file names (``labels``) and the
synthetic demo data (``demo``). Every other layer builds on this one; it imports none of them.
Import from the submodules: this package stays empty so the CLI starts without h5py."""
