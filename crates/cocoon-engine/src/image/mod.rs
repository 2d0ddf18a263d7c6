//! Images: OCI VM images pulled from registries, each layer an EROFS disk.

pub mod commit;
pub mod erofs;
pub mod import;
pub mod layer;
pub mod oci;
pub mod store;
pub mod vmlinux;
