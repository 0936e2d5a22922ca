//! Placeholder: the EBS upload benchmark (issue 19).
fn main() {}
