//! Mixed precision: give each tensor one of several registered formats so
//! that the average bits per weight stays within a budget and the total
//! (importance-weighted) squared error is smallest.
//!
//! [`sensitivity`] measures each candidate's error on a deterministic sample
//! of rows of each tensor; [`allocate`] solves the resulting multiple-choice
//! knapsack by greedy upgrades along each tensor's lower convex hull of
//! (bits, error), which is optimal up to the last upgrade that does not fit.
//! [`Mixed`] puts both behind the registry's recipe interface as `mixed`.
#![warn(missing_docs)]

pub mod allocate;
pub mod recipe;
pub mod sensitivity;

pub use allocate::{allocate, Allocation, Choice};
pub use recipe::Mixed;
pub use sensitivity::{sensitivity, Objective, Option as CandidateError, TensorSensitivity};
