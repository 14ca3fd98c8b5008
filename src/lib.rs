//! keyward
