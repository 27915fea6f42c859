//! SQS driver (being written).
