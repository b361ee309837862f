//! The Compose side's loader: discovery, .env, interpolation, merge, extends/include/profiles,
//! normalisation to the long form, validation, the service graph and config hashes.
//! Pure: no syscalls beyond reading files.
