//! pgcluster (being written)
