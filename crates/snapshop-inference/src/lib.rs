//! placeholder, replaced by the inference helper
