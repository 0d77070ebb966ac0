//! The door for tests, benches, fuzz targets and examples to the crate's internals.
//!
//! Everything below `startup` is private to the crate, so the compiler reports
//! dead code; what the other targets need is re-exported here, by the same
//! paths as inside the crate (`avemint::testing::session::Sessions` is
//! `crate::session::Sessions`). Not API: no stability, hidden from the docs.

pub mod ave {
    pub use crate::ave::{AveClient, AveError, ClientOptions, IdTokenError, KeySet, TokenResponse};
    pub mod client {
        pub use crate::ave::client::classify_error;
    }
    pub mod id_token {
        pub use crate::ave::id_token::{NonceCheck, validate, validate_with_keys};
    }
    pub mod settings {
        pub use crate::ave::settings::DEFAULT_SCOPES;
    }
}

pub mod clock {
    pub use crate::clock::{Clock, ManualClock, UnixTime};
}

pub mod http {
    pub mod cookies {
        pub use crate::http::cookies::{LOGIN_COOKIE, MAX_COOKIE_LEN, SESSION_COOKIE, Sent, counted_len, find, values};
    }
    pub mod cors {
        pub use crate::http::cors::AllowedOrigins;
    }
    pub mod docs {
        pub use crate::http::docs::inline_elements;
    }
    pub mod security {
        pub use crate::http::security::{Docs, SecuritySettings};
    }
}

pub mod mint {
    pub use crate::mint::{Minter, Profiles, Subject};
    pub mod claims {
        pub use crate::mint::claims::ClaimTemplate;
    }
    pub mod keys {
        pub use crate::mint::keys::{Algorithm, KeyDir, KeyPolicy, LiveKeys};
    }
    pub mod profiles {
        pub use crate::mint::profiles::TokenSettings;
    }
}

pub mod proxy {
    pub use crate::proxy::RouteSettings;
    pub mod readings {
        pub use crate::proxy::readings::escape;
    }
    pub mod settings {
        pub use crate::proxy::settings::{UnsafePath, check_rest};
    }
}

pub mod secret {
    pub use crate::secret::{Secret, random_bytes};
}

pub mod server {
    pub use crate::server::ConnectionTimeouts;
}

pub mod session {
    pub use crate::session::{
        AveTokens, CountCutoffs, DatabaseUrl, HandleHash, OwnerHash, Purpose, RenewalSettings, Sealer, SealingKeys,
        SessionCounts, SessionData, SessionHandle, SessionId, SessionRowHash, SessionSettings, SessionStore, Sessions,
        StoreError, StoredSession, SweepCutoffs,
    };
    pub mod postgres {
        pub use crate::session::postgres::PostgresStore;
    }
    pub mod sqlite {
        pub use crate::session::sqlite::SqliteStore;
    }
}

pub mod signin {
    pub use crate::signin::{
        Callback, PendingLogin, PendingLoginError, ReturnPath, SignInError, check_state, decode_login, encode_login,
    };
    pub mod return_path {
        pub use crate::signin::return_path::MAX_RETURN_PATH;
    }
}

pub mod traffic {
    pub mod client_ip {
        pub use crate::traffic::client_ip::TrustedProxies;
    }
    pub mod rate_limit {
        pub use crate::traffic::rate_limit::RateLimit;
    }
}

pub mod web_url {
    pub use crate::web_url::{Issuer, PublicUrl};
}
