//! Images: OCI VM images pulled from registries, each layer an EROFS disk,
//! and cloud images, one qcow2 disk each.

pub mod agent_layer;
pub mod archive;
pub mod cloud;
pub mod commit;
pub mod config;
pub mod erofs;
pub mod import;
pub mod layer;
pub mod limits;
pub mod oci;
pub mod store;
pub mod vmlinux;
