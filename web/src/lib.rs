//! What every HTTP service of lpmesh (the store's tablet UI, HQ's upload API and dashboard) needs the
//! same way: logins that hold under attack and request bodies read within limits.

pub mod body;
pub mod login;
