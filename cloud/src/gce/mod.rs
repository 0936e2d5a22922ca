//! placeholder; written by the gce helper.
