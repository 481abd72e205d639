//! Tests of schema files, compilation, routing and predicate semantics.
