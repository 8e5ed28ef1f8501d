//! Property tests against simple reference models (proptest).
