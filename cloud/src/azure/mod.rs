//! placeholder; written by the azure helper.
