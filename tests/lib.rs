//! The end-to-end suite lives in `it/`; this library is empty.
