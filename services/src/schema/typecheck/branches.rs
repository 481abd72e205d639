//! Distributing a checked filter into branches: Kleene logic is
//! distributive, so a row makes the filter TRUE exactly when some branch's
//! keys match and its predicates are all TRUE.

use super::{Chain, Cond};
use crate::schema::eval::Node;

/// One alternative of a distributed filter.
#[derive(Clone, Debug, Default)]
pub(crate) struct Branch {
    /// `column = auth.claim` equalities: `(column, claim path)`.
    pub claims: Vec<(usize, Vec<String>)>,
    /// `column IN (SELECT …)` alternatives: `(column, chain)`.
    pub members: Vec<(usize, Chain)>,
    /// `column = param.name` equalities: `(column, name)`.
    pub client: Vec<(usize, String)>,
    /// Predicates on the row alone, all of which must be TRUE.
    pub preds: Vec<Node>,
}

impl Branch {
    /// The AND of the branch's predicates; `None` is TRUE.
    pub(crate) fn filter(&mut self) -> Option<Node> {
        match self.preds.len() {
            0 => None,
            1 => self.preds.pop(),
            _ => Some(Node::And(std::mem::take(&mut self.preds))),
        }
    }

    fn join(&mut self, other: &Branch) {
        self.claims.extend(other.claims.iter().cloned());
        self.members.extend(other.members.iter().cloned());
        self.client.extend(other.client.iter().cloned());
        self.preds.extend(other.preds.iter().cloned());
    }
}

impl Cond {
    /// The number of branches the condition distributes into (saturating).
    pub(crate) fn branch_count(&self) -> usize {
        match self {
            Cond::And(items) => items
                .iter()
                .fold(1usize, |n, c| n.saturating_mul(c.branch_count())),
            Cond::Or(items) => items
                .iter()
                .fold(0usize, |n, c| n.saturating_add(c.branch_count())),
            Cond::Param { .. } | Cond::Member { .. } | Cond::ClientParam { .. } | Cond::Pred(_) => {
                1
            }
        }
    }

    /// Distributes the condition into a disjunction of branches. Call only
    /// when [`Cond::branch_count`] is small.
    pub(crate) fn into_branches(self) -> Vec<Branch> {
        match self {
            Cond::Param { column, claim } => vec![Branch {
                claims: vec![(column, claim)],
                ..Branch::default()
            }],
            Cond::Member { column, chain } => vec![Branch {
                members: vec![(column, chain)],
                ..Branch::default()
            }],
            Cond::ClientParam { column, name } => vec![Branch {
                client: vec![(column, name)],
                ..Branch::default()
            }],
            Cond::Pred(node) => vec![Branch {
                preds: vec![node],
                ..Branch::default()
            }],
            Cond::Or(items) => items.into_iter().flat_map(Cond::into_branches).collect(),
            Cond::And(items) => {
                let mut acc = vec![Branch::default()];
                for item in items {
                    let alternatives = item.into_branches();
                    let mut next = Vec::with_capacity(acc.len() * alternatives.len());
                    for left in &acc {
                        for right in &alternatives {
                            let mut b = left.clone();
                            b.join(right);
                            next.push(b);
                        }
                    }
                    acc = next;
                }
                acc
            }
        }
    }
}
