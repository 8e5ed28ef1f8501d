//! Issue 5: upstream credentials (basic, oauth2 client_credentials) and CORS.

#[allow(unused_imports)]
use crate::common::*;
