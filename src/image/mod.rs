//! What image files say about themselves and how they are repacked: `metadata.yaml` out of a
//! metadata tarball ([`metadata`]), and unified tarballs built from split images ([`unified`]).

pub mod metadata;
pub mod unified;
