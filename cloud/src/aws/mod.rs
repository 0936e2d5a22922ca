//! placeholder; written by the aws helper.
