//! `whelm-relay ctl`: the operator's view through the command socket (in
//! progress).
