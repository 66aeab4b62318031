//! HQ summaries and envelopes, the HQ receiver service and its storage.
//!
//! No video, no ML. Filled by issue [4/7] (see ARCHITECTURE.md); until then it only reserves its place
//! in the workspace.
