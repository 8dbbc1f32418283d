//! heli's end-to-end tests: one binary, real processes.
