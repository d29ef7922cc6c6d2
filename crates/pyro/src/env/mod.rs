//! Environments: the catalog of recipes, builds into an OCI image layout, and unpacked root
//! filesystems.
