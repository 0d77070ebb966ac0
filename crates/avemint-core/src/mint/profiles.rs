//! Token profiles: one kind of app JWT per downstream API.
//!
//! A profile has a name, an `audience`, a lifetime, a claim map and optionally
//! an enrichment hook. `POST /auth/token` picks one by audience or by name; with
//! neither it gets the default profile. Env-only deployments have exactly one
//! profile, `default`, built from `AVEMINT_TOKEN_AUDIENCE`, `AVEMINT_TOKEN_TTL`
//! and `AVEMINT_TOKEN_CLAIMS`; more profiles come from the config file.
//!
//! Page script mints through `/auth/token` only the profiles that allow it
//! (`browser`): by default every profile but those a proxied route attaches
//! (proxy mode promises their tokens never reach the page). Any other name,
//! audience or default is answered like an unknown one (`SelectError`).
//!
//! `ProfileSpec` is one profile's validated configuration and `TokenSettings`
//! the whole set (never empty, exactly one default; plain data, made by
//! `config`); `Profiles` is what the minter uses at run time (with live hooks).

use std::time::Duration;

use super::claims::ClaimTemplate;
use super::hook::{Hook, HookError, HookSpec};
use avemint_base::secret::{Credential, Secret};

/// The name of the profile built from the env-only settings.
pub const DEFAULT_PROFILE_NAME: &str = "default";
/// Default `max_token_bytes`.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 4096;
/// Default token lifetime (`AVEMINT_TOKEN_TTL`, a profile's `ttl`), seconds.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 300;

/// App-JWT minting: the token profiles and the size limit.
///
/// The list is never empty and has exactly one default profile: env-only
/// deployments get the single profile `default` (see the module doc), so
/// nothing downstream special-cases an empty list.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    profiles: Vec<ProfileSpec>,
    default: usize,
    max_token_bytes: usize,
}

impl TokenSettings {
    /// Checks the set (`validate`) and marks a single profile as the default.
    pub fn new(mut profiles: Vec<ProfileSpec>, max_token_bytes: usize) -> Result<Self, Vec<String>> {
        let errors = validate(&profiles);
        if !errors.is_empty() {
            return Err(errors);
        }
        if let [only] = profiles.as_mut_slice() {
            only.default = true;
        }
        let default = profiles.iter().position(|p| p.default).unwrap_or(0);
        Ok(Self {
            profiles,
            default,
            max_token_bytes,
        })
    }

    /// All profiles, in configuration order.
    pub fn profiles(&self) -> &[ProfileSpec] {
        &self.profiles
    }

    /// The profile minted when a request names none.
    pub fn default_profile(&self) -> &ProfileSpec {
        &self.profiles[self.default]
    }

    /// Minting fails (500 `server_error`) rather than hand out a longer token.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Settles each profile's `browser` the configuration left unsaid: false for a profile a proxied route
    /// attaches (`route_profiles`: each route's profile name, `None` for the default profile), true otherwise.
    pub fn settle_browser<'a>(mut self, route_profiles: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let default = self.default_profile().name.clone();
        let used: Vec<String> = route_profiles
            .into_iter()
            .map(|p| p.unwrap_or(&default).to_owned())
            .collect();
        for p in &mut self.profiles {
            // A service profile is never minted for a browser.
            p.browser = Some(p.browser.unwrap_or(!used.contains(&p.name)) && !p.grants.service);
        }
        self
    }

    /// Problems with the proxied routes' profiles (`route_profiles`, as for `settle_browser`): a service profile's
    /// token is never attached for a browser.
    pub fn route_errors<'a>(&self, route_profiles: impl IntoIterator<Item = Option<&'a str>>) -> Vec<String> {
        let default = self.default_profile();
        route_profiles
            .into_iter()
            .filter_map(|p| match p {
                Some(name) => self.profiles.iter().find(|q| q.name == name),
                None => Some(default),
            })
            .filter(|p| p.grants.service)
            .map(|p| {
                format!(
                    "profile `{}` is a service profile (`service = true`): a proxied route cannot attach it",
                    p.name
                )
            })
            .collect()
    }
}

/// One configured profile.
#[derive(Debug, Clone)]
pub struct ProfileSpec {
    /// The profile's name, as clients may send it in `{"profile": …}`.
    pub name: String,
    /// The `aud` claim of its tokens.
    pub audience: String,
    /// Token lifetime.
    pub ttl: Duration,
    /// Configured claims.
    pub claims: ClaimTemplate,
    /// Minted when a request names no profile and no audience.
    pub default: bool,
    /// Optional enrichment hook.
    pub hook: Option<HookSpec>,
    /// The secret callers of `POST /oauth/introspect` present for this
    /// profile (HTTP Basic, the profile name as client id); `None`: this
    /// profile cannot introspect.
    pub introspection_secret: Option<Secret<String>>,
    /// `browser`: page script may mint it through `POST /auth/token`. `None`: not configured, settled by
    /// `TokenSettings::settle_browser` (false for a route's profile, true otherwise).
    pub browser: Option<bool>,
    /// What the token service (`POST /oauth/token`) may do with it.
    pub grants: ProfileGrants,
}

/// A profile's part in the token service (`POST /oauth/token`).
#[derive(Debug, Clone, Default)]
pub struct ProfileGrants {
    /// `service = true`: a service identity, minted only by `client_credentials` (never for a browser, a route or
    /// an exchange); its tokens' `sub` and `client_id` are the profile's name.
    pub service: bool,
    /// `[profiles.client]` `secret`/`secret_file`: a service profile's credential for `client_credentials`.
    pub client_secret: Option<Secret<String>>,
    /// `[profiles.exchange]`: a user profile whose tokens' holder may exchange them for other profiles' tokens.
    pub exchange: Option<ExchangeSpec>,
    /// `exchange_from_ave = true`: Ave access tokens may be exchanged for this profile's tokens.
    pub exchange_from_ave: bool,
}

/// `[profiles.exchange]`: the credential a holder of this profile's tokens presents, and the profiles it may ask for.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    /// `secret` or `secret_file`.
    pub secret: Secret<String>,
    /// `may_exchange_to`: names of the profiles it may exchange its tokens for.
    pub may_exchange_to: Vec<String>,
}

/// Checks a profile name: 1–64 of `A-Z a-z 0-9 . _ -`.
pub fn parse_name(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("must be 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`".into())
    }
}

/// Problems with a set of profiles as a whole, one line each.
pub(crate) fn validate(profiles: &[ProfileSpec]) -> Vec<String> {
    let mut errors = Vec::new();
    if profiles.is_empty() {
        errors.push("profiles: the list is empty; add a profile or remove `profiles`".into());
        return errors;
    }
    for (i, p) in profiles.iter().enumerate() {
        if profiles[..i].iter().any(|q| q.name == p.name) {
            errors.push(format!("profile `{}`: the name is used by another profile", p.name));
        }
        if let Some(q) = profiles[..i].iter().find(|q| q.audience == p.audience) {
            errors.push(format!(
                "profile `{}`: audience `{}` is already the audience of profile `{}`; each API needs its own",
                p.name, p.audience, q.name
            ));
        }
    }
    for p in profiles {
        errors.extend(grant_errors(p, profiles));
    }
    match profiles.iter().filter(|p| p.default).count() {
        1 => {}
        0 if profiles.len() == 1 => {}
        0 => errors.push("profiles: mark exactly one profile `default = true`".into()),
        _ => errors.push("profiles: more than one profile has `default = true`".into()),
    }
    errors
}

/// Problems with one profile's token-service settings (`ProfileGrants`).
fn grant_errors(p: &ProfileSpec, all: &[ProfileSpec]) -> Vec<String> {
    let mut errors = Vec::new();
    let g = &p.grants;
    let name = &p.name;
    if g.service {
        if g.client_secret.is_none() {
            errors.push(format!(
                "profile `{name}`: `service = true` needs `[profiles.client]` with a secret"
            ));
        }
        if p.browser == Some(true) {
            errors.push(format!(
                "profile `{name}`: a service profile is never minted for a browser (`browser = true`)"
            ));
        }
        if g.exchange.is_some() {
            errors.push(format!(
                "profile `{name}`: a service profile cannot have `[profiles.exchange]` (its tokens belong to no user)"
            ));
        }
        if g.exchange_from_ave {
            errors.push(format!(
                "profile `{name}`: a service profile cannot have `exchange_from_ave = true`"
            ));
        }
    } else if g.client_secret.is_some() {
        errors.push(format!(
            "profile `{name}`: `[profiles.client]` is for service profiles only (`service = true`)"
        ));
    }
    if let Some(exchange) = &g.exchange {
        if exchange.may_exchange_to.is_empty() {
            errors.push(format!(
                "profile `{name}`: `[profiles.exchange]` needs `may_exchange_to` (profile names)"
            ));
        }
        for target in &exchange.may_exchange_to {
            match all.iter().find(|q| &q.name == target) {
                None => errors.push(format!("profile `{name}`: `may_exchange_to` names `{target}`, which no profile is")),
                Some(q) if q.grants.service => errors.push(format!(
                    "profile `{name}`: `may_exchange_to` names the service profile `{target}` (a service token is no user's)"
                )),
                Some(_) => {}
            }
        }
    }
    errors
}

/// A profile ready to mint for.
pub struct Profile {
    pub name: String,
    pub audience: String,
    pub ttl: Duration,
    pub claims: ClaimTemplate,
    pub hook: Option<Hook>,
    /// See `ProfileSpec::introspection_secret`; kept as its digest, compared in constant time.
    pub introspection_secret: Option<Credential>,
    /// Page script may mint it through `POST /auth/token` (see `ProfileSpec::browser`).
    pub browser: bool,
    /// Its part in the token service (see `ProfileGrants`), credentials kept as digests.
    pub grants: Grants,
}

/// A profile's part in the token service, ready to check credentials against (in constant time).
pub struct Grants {
    /// See `ProfileGrants::service`.
    pub service: bool,
    /// The credential the profile authenticates with at `POST /oauth/token`: `[profiles.client]` for a service
    /// profile, `[profiles.exchange]` for a user profile.
    pub credential: Option<Credential>,
    /// `may_exchange_to`: profile names (empty: this profile's tokens cannot be exchanged).
    pub may_exchange_to: Vec<String>,
    /// See `ProfileGrants::exchange_from_ave`.
    pub exchange_from_ave: bool,
}

impl Grants {
    fn of(spec: &ProfileGrants) -> Self {
        let secret = spec
            .client_secret
            .as_ref()
            .or(spec.exchange.as_ref().map(|e| &e.secret));
        Self {
            service: spec.service,
            credential: secret.map(|s| Credential::new(s.expose())),
            may_exchange_to: spec
                .exchange
                .as_ref()
                .map(|e| e.may_exchange_to.clone())
                .unwrap_or_default(),
            exchange_from_ave: spec.exchange_from_ave,
        }
    }
}

/// Why a request's target names no profile.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// Maps to 403 `invalid_target`.
    #[error("no token profile has this audience")]
    UnknownAudience,
    /// Maps to 403 `invalid_target`.
    #[error("no token profile has this name")]
    UnknownProfile,
    /// The default profile (no name, no audience asked for) is not one page script may mint. Maps to 403
    /// `invalid_target`.
    #[error("the default token profile is not mintable here")]
    DefaultNotMintable,
    /// Maps to 400 `invalid_request`.
    #[error("profile `{0}` does not have the requested audience; send one of `profile` or `audience`")]
    Inconsistent(String),
}

impl SelectError {
    /// True for the errors that are RFC 8707 `invalid_target`.
    pub fn is_invalid_target(&self) -> bool {
        matches!(
            self,
            Self::UnknownAudience | Self::UnknownProfile | Self::DefaultNotMintable
        )
    }
}

/// All profiles; exactly one is the default.
pub struct Profiles {
    list: Vec<Profile>,
    default: usize,
}

impl Profiles {
    /// Builds the run-time profiles (with live hooks) from settings.
    pub fn build(token: &TokenSettings) -> Result<Self, HookError> {
        let list = token
            .profiles()
            .iter()
            .map(|spec| {
                Ok(Profile {
                    name: spec.name.clone(),
                    audience: spec.audience.clone(),
                    ttl: spec.ttl,
                    claims: spec.claims.clone(),
                    hook: spec.hook.as_ref().map(|h| Hook::new(h, &spec.name)).transpose()?,
                    introspection_secret: spec.introspection_secret.as_ref().map(|s| Credential::new(s.expose())),
                    browser: spec.browser.unwrap_or(true) && !spec.grants.service,
                    grants: Grants::of(&spec.grants),
                })
            })
            .collect::<Result<_, HookError>>()?;
        Ok(Self {
            list,
            default: token.default,
        })
    }

    /// The reloaders of the hook secrets read from files.
    pub fn reloaders(&self) -> Vec<std::sync::Arc<dyn avemint_base::reload::Reload>> {
        self.list.iter().filter_map(|p| p.hook.as_ref()?.reloader()).collect()
    }

    /// The profile minted when a request names none.
    pub fn default_profile(&self) -> &Profile {
        &self.list[self.default]
    }

    /// The profile named `name`, if any.
    pub(crate) fn by_name(&self, name: &str) -> Option<&Profile> {
        self.list.iter().find(|p| p.name == name)
    }

    /// The profile whose audience is `audience`, if any.
    pub(crate) fn by_audience(&self, audience: &str) -> Option<&Profile> {
        self.list.iter().find(|p| p.audience == audience)
    }

    /// The names of the profiles page script may mint (`browser`), in configuration order.
    pub fn browser_names(&self) -> Vec<&str> {
        self.list
            .iter()
            .filter(|p| p.browser)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Picks the profile a request asks for: by name, by audience, both (which
    /// must agree) or neither (the default). Never falls back to another profile.
    pub fn select(&self, profile: Option<&str>, audience: Option<&str>) -> Result<&Profile, SelectError> {
        self.select_among(profile, audience, |_| true)
    }

    /// `select` for page script (`POST /auth/token`): a profile that is not `browser` is answered exactly as one
    /// that does not exist, so script cannot tell them apart.
    pub fn select_for_browser(&self, profile: Option<&str>, audience: Option<&str>) -> Result<&Profile, SelectError> {
        self.select_among(profile, audience, |p| p.browser)
    }

    fn select_among(
        &self,
        profile: Option<&str>,
        audience: Option<&str>,
        visible: impl Fn(&Profile) -> bool,
    ) -> Result<&Profile, SelectError> {
        let find = |matches: &dyn Fn(&Profile) -> bool| self.list.iter().find(|p| matches(p) && visible(p));
        let by_name = profile
            .map(|n| find(&|p| p.name == n).ok_or(SelectError::UnknownProfile))
            .transpose()?;
        let by_audience = audience
            .map(|a| find(&|p| p.audience == a).ok_or(SelectError::UnknownAudience))
            .transpose()?;
        match (by_name, by_audience) {
            (Some(p), Some(q)) if p.name != q.name => Err(SelectError::Inconsistent(p.name.clone())),
            (Some(p), _) | (None, Some(p)) => Ok(p),
            (None, None) => Some(self.default_profile())
                .filter(|p| visible(p))
                .ok_or(SelectError::DefaultNotMintable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, audience: &str, default: bool) -> ProfileSpec {
        ProfileSpec {
            name: name.into(),
            audience: audience.into(),
            ttl: Duration::from_secs(60),
            claims: ClaimTemplate::default(),
            default,
            hook: None,
            introspection_secret: None,
            browser: None,
            grants: ProfileGrants::default(),
        }
    }

    fn settings(profiles: Vec<ProfileSpec>) -> TokenSettings {
        TokenSettings::new(profiles, DEFAULT_MAX_TOKEN_BYTES).expect("valid profiles")
    }

    #[test]
    fn env_only_settings_make_one_default_profile() {
        let env_only = ProfileSpec {
            ttl: Duration::from_secs(300),
            ..spec(DEFAULT_PROFILE_NAME, "https://flat.example", false)
        };
        let p = Profiles::build(&settings(vec![env_only])).expect("builds");
        let d = p.default_profile();
        assert_eq!(
            (d.name.as_str(), d.audience.as_str()),
            ("default", "https://flat.example")
        );
        assert_eq!(d.ttl, Duration::from_secs(300));
        assert_eq!(
            p.select(None, Some("https://flat.example")).map(|p| &p.name),
            Ok(&d.name)
        );
        assert_eq!(p.select(Some("default"), None).map(|p| &p.name), Ok(&d.name));
    }

    #[test]
    fn selection_by_name_audience_both_or_neither_never_falls_back() {
        let p = Profiles::build(&settings(vec![
            spec("web", "https://web", false),
            spec("orders", "orders-api", true),
        ]))
        .expect("builds");
        let name = |r: Result<&Profile, SelectError>| r.map(|p| p.name.clone());
        assert_eq!(name(p.select(None, None)), Ok("orders".into()));
        assert_eq!(name(p.select(Some("web"), None)), Ok("web".into()));
        assert_eq!(name(p.select(None, Some("https://web"))), Ok("web".into()));
        assert_eq!(name(p.select(Some("web"), Some("https://web"))), Ok("web".into()));
        assert_eq!(name(p.select(None, Some("other"))), Err(SelectError::UnknownAudience));
        assert_eq!(name(p.select(Some("nope"), None)), Err(SelectError::UnknownProfile));
        assert_eq!(
            name(p.select(Some("web"), Some("orders-api"))),
            Err(SelectError::Inconsistent("web".into()))
        );
        assert!(
            p.select(Some("web"), Some("unknown"))
                .is_err_and(|e| e.is_invalid_target())
        );
        // Names and audiences are matched exactly.
        assert!(p.select(None, Some("https://web/")).is_err());
        assert!(p.select(Some("WEB"), None).is_err());
    }

    #[test]
    fn route_profiles_are_not_mintable_by_page_script_unless_they_say_so() {
        let mut said = spec("said", "https://said", false);
        said.browser = Some(true);
        let mut unsaid = spec("off", "https://off", false);
        unsaid.browser = Some(false);
        let token = settings(vec![
            spec("web", "https://web", true),
            spec("orders", "orders-api", false),
            said,
            unsaid,
        ])
        .settle_browser([Some("orders"), Some("said")]);
        let p = Profiles::build(&token).expect("builds");
        assert_eq!(p.browser_names(), ["web", "said"]);
        let name = |r: Result<&Profile, SelectError>| r.map(|p| p.name.clone());
        assert_eq!(name(p.select_for_browser(None, None)), Ok("web".into()));
        assert_eq!(name(p.select_for_browser(Some("said"), None)), Ok("said".into()));
        // A route's profile is answered as an unknown one, by name or by audience, and mixing names does not
        // reveal it either.
        assert_eq!(
            name(p.select_for_browser(Some("orders"), None)),
            Err(SelectError::UnknownProfile)
        );
        assert_eq!(
            name(p.select_for_browser(Some("nope"), None)),
            Err(SelectError::UnknownProfile)
        );
        assert_eq!(
            name(p.select_for_browser(None, Some("orders-api"))),
            Err(SelectError::UnknownAudience)
        );
        assert_eq!(
            name(p.select_for_browser(Some("web"), Some("orders-api"))),
            Err(SelectError::UnknownAudience)
        );
        assert_eq!(
            name(p.select_for_browser(Some("off"), None)),
            Err(SelectError::UnknownProfile)
        );
        // The proxy still mints it.
        assert_eq!(name(p.select(Some("orders"), None)), Ok("orders".into()));
        // A route with no `profile` attaches the default one, which then is not mintable by script.
        let token = settings(vec![spec("web", "https://web", true)]).settle_browser([None]);
        let p = Profiles::build(&token).expect("builds");
        assert_eq!(
            name(p.select_for_browser(None, None)),
            Err(SelectError::DefaultNotMintable)
        );
        assert!(p.browser_names().is_empty());
        assert_eq!(name(p.select(None, None)), Ok("web".into()));
    }

    #[test]
    fn token_settings_are_never_empty_and_have_one_default() {
        assert!(TokenSettings::new(vec![], DEFAULT_MAX_TOKEN_BYTES).is_err());
        let one = settings(vec![spec("a", "x", false)]);
        assert!(one.default_profile().default, "a single profile is the default");
        let two = settings(vec![spec("a", "x", false), spec("b", "y", true)]);
        assert_eq!(two.default_profile().name, "b");
    }

    #[test]
    fn duplicates_and_defaults_are_checked() {
        assert!(validate(&[spec("a", "x", false)]).is_empty());
        assert_eq!(validate(&[]).len(), 1);
        assert!(validate(&[spec("a", "x", true), spec("b", "y", false)]).is_empty());
        let e = validate(&[spec("a", "x", true), spec("a", "y", false)]);
        assert!(e.len() == 1 && e[0].contains("name"), "{e:?}");
        let e = validate(&[spec("a", "x", true), spec("b", "x", false)]);
        assert!(e.len() == 1 && e[0].contains("audience"), "{e:?}");
        assert_eq!(validate(&[spec("a", "x", false), spec("b", "y", false)]).len(), 1);
        assert_eq!(validate(&[spec("a", "x", true), spec("b", "y", true)]).len(), 1);
    }

    proptest::proptest! {
        /// Whatever a client sends, the token is for exactly what it asked, or none.
        #[test]
        fn selection_never_gives_another_audience_or_name(
            profile in proptest::option::of("[a-c]{0,2}"),
            audience in proptest::option::of("aud-[a-c]{0,2}"),
        ) {
            let p = Profiles::build(&settings(vec![
                spec("a", "aud-a", true),
                spec("b", "aud-b", false),
                spec("c", "aud-cc", false),
            ]))
            .expect("builds");
            match p.select(profile.as_deref(), audience.as_deref()) {
                Ok(chosen) => {
                    if let Some(n) = &profile { proptest::prop_assert_eq!(&chosen.name, n); }
                    if let Some(a) = &audience { proptest::prop_assert_eq!(&chosen.audience, a); }
                    if profile.is_none() && audience.is_none() { proptest::prop_assert_eq!(chosen.name.as_str(), "a"); }
                }
                Err(e) => proptest::prop_assert!(profile.is_some() || audience.is_some(), "{e}"),
            }
        }
    }

    #[test]
    fn service_profiles_are_never_a_browser_s_or_a_route_s() {
        let mut job = spec("job", "jobs", true);
        job.grants = ProfileGrants {
            service: true,
            client_secret: Some(Secret::new("0123456789abcdef0123456789abcdef".into())),
            ..ProfileGrants::default()
        };
        let token = settings(vec![job, spec("web", "https://web", false)]);
        // A route naming it, and a route naming no profile (the default, here the service), are refused.
        assert_eq!(token.route_errors([Some("job")]).len(), 1);
        assert_eq!(token.route_errors([None]).len(), 1);
        assert!(token.route_errors([Some("web")]).is_empty());
        let p = Profiles::build(&token.settle_browser([])).expect("builds");
        assert_eq!(p.browser_names(), ["web"]);
        assert!(p.select_for_browser(Some("job"), None).is_err());
        assert!(
            p.select_for_browser(None, None).is_err(),
            "the default is the service: not for a browser"
        );
        let job = p.by_name("job").expect("job");
        assert!(job.grants.service && job.grants.credential.is_some());
    }

    #[test]
    fn profile_names() {
        assert!(parse_name("orders-api.v2_x").is_ok());
        for bad in ["", "has space", "ünï", &"x".repeat(65)] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }
}
