//! The generated `keyrelay.v1` servers (build.rs): they answer WatchKeys and Resolve with
//! `EncodedEvent`s through `LeanCodec`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/servers/keyrelay.v1.rs"));
