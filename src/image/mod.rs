//! What image files say about themselves and how they are repacked: `metadata.yaml` out of a
//! metadata tarball ([`metadata`]), the one rule a rootfs, disk or unified tarball must pass
//! ([`check`]), and unified tarballs built from split images ([`unified`]).

pub mod check;
pub mod metadata;
pub mod unified;
