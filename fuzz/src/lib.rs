//! Shared code of the fuzz targets in `fuzz_targets/`: how each target reads its input, the
//! fixtures it runs against, and the checks it makes. The targets themselves only call
//! [`decoder::run`], [`handshake::run`] and [`headers::run`], so the same code can run on a
//! saved input outside libFuzzer.

#![forbid(unsafe_code)]

pub mod decoder;
pub mod handshake;
pub mod headers;
pub mod seeds;
