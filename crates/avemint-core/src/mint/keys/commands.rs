//! The `avemint keys …` commands: what each does and what it prints. The
//! binary only parses arguments and prints the returned text, so these are
//! tested as library code and over the real binary.

use super::rotation::{JWKS_CACHE_LIFETIME, KeyDir, RETIRED_HOLD, format_age};
use super::{Algorithm, KeyError, KeyRing, KeyState};
use avemint_base::clock::UnixTime;

/// `keys generate [--alg …]`.
pub fn generate(dir: &KeyDir, alg: Algorithm, now: UnixTime) -> Result<String, KeyError> {
    let entry = dir.generate(alg, now)?;
    let what = match entry.state {
        KeyState::Current => "it signs new tokens now (the directory had no key)".to_owned(),
        _ => format!(
            "it is published now and may sign after `avemint keys rotate` in {}",
            format_age(JWKS_CACHE_LIFETIME)
        ),
    };
    Ok(format!(
        "generated {} key {} ({}): {what}\n",
        entry.alg,
        entry.kid,
        entry.state.as_str()
    ))
}

/// `keys list`: one line per key, current first: kid, alg, state, age.
pub fn list(dir: &KeyDir, now: UnixTime) -> Result<String, KeyError> {
    let ring = KeyRing::load(dir.path())?;
    let mut out = format!("{:<43}  {:<5}  {:<7}  {:<7}  NOTE\n", "KID", "ALG", "STATE", "AGE");
    for k in ring.keys() {
        let e = &k.entry;
        let note = match e.state {
            KeyState::Current => "signs new tokens".to_owned(),
            KeyState::Next => {
                let ready = e.created + JWKS_CACHE_LIFETIME;
                if ready <= now {
                    "ready to sign (`keys rotate`)".to_owned()
                } else {
                    format!("ready to sign in {}", format_age(ready.saturating_duration_since(now)))
                }
            }
            KeyState::Retired => {
                let until = e.retired.unwrap_or(e.created) + RETIRED_HOLD;
                if until <= now {
                    "expired; removed by `keys prune`".to_owned()
                } else {
                    format!(
                        "published for {} more",
                        format_age(until.saturating_duration_since(now))
                    )
                }
            }
        };
        out.push_str(&format!(
            "{:<43}  {:<5}  {:<7}  {:<7}  {note}\n",
            e.kid,
            e.alg.jws(),
            e.state.as_str(),
            format_age(now.saturating_duration_since(e.created)),
        ));
    }
    Ok(out)
}

/// `keys rotate [--alg …] [--force]`.
pub fn rotate(dir: &KeyDir, alg: Algorithm, force: bool, now: UnixTime) -> Result<String, KeyError> {
    let r = dir.rotate(alg, now, force)?;
    Ok(format!(
        "rotated: {} retired (still published), {} now signs, {} is the new next key ({alg})\n",
        r.retired, r.current, r.next
    ))
}

/// `keys prune`.
pub fn prune(dir: &KeyDir, now: UnixTime) -> Result<String, KeyError> {
    let gone = dir.prune(now)?;
    if gone.is_empty() {
        return Ok("nothing to prune\n".into());
    }
    Ok(gone
        .iter()
        .map(|k| format!("removed retired key {}\n", k.kid))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_list_rotate_prune_texts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = KeyDir::new(tmp.path().join("k"));
        let now = UnixTime::from_secs(1_700_000_000);
        assert!(
            generate(&dir, Algorithm::Es256, now)
                .expect("gen")
                .contains("(current)")
        );
        assert!(generate(&dir, Algorithm::EdDsa, now).expect("gen").contains("(next)"));
        let text = list(&dir, now).expect("list");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("KID"));
        assert!(lines[1].contains("ES256") && lines[1].contains("current"), "{text}");
        assert!(lines[2].contains("EdDSA") && lines[2].contains("next"), "{text}");
        assert!(rotate(&dir, Algorithm::Es256, false, now).is_err(), "next too new");
        assert!(
            rotate(&dir, Algorithm::Es256, true, now)
                .expect("forced")
                .starts_with("rotated")
        );
        assert_eq!(prune(&dir, now).expect("prune"), "nothing to prune\n");
    }
}
