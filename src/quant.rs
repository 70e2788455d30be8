//! GPU weight formats (being written).
