//! Anti-spoofing (to be written).
