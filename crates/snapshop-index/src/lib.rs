//! placeholder, replaced by the index helper
