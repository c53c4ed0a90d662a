//! Test support for hyperhive.
