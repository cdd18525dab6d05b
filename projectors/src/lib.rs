//! Projectors (in progress).
