//! The whole forward pass on the CPU (being written).
