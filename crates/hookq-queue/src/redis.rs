//! Redis driver (being written).
