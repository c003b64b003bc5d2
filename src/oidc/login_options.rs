//! What a login request may add to the authorization request: `prompt`, `login_hint`,
//! `max_age` and `acr_values`, read and checked from `/auth/login`'s query.

/// `prompt` values `/auth/login` accepts (OpenID Connect Core §3.1.2.1, and `create` from
/// Initiating User Registration 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    None,
    Login,
    Consent,
    SelectAccount,
    Create,
}

impl Prompt {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "none" => Prompt::None,
            "login" => Prompt::Login,
            "consent" => Prompt::Consent,
            "select_account" => Prompt::SelectAccount,
            "create" => Prompt::Create,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Prompt::None => "none",
            Prompt::Login => "login",
            Prompt::Consent => "consent",
            Prompt::SelectAccount => "select_account",
            Prompt::Create => "create",
        }
    }
}

/// The longest `login_hint` or `acr_values` accepted (an e-mail address is at most 254).
const MAX_HINT_CHARS: usize = 256;

/// What a login request adds to the authorization request: `prompt` (replacing the
/// provider's configured one), `login_hint`, `max_age` and `acr_values` (step-up login). Each
/// replaces a configured `authorize_params` entry of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginOptions {
    pub prompt: Option<Prompt>,
    pub login_hint: Option<String>,
    pub max_age: Option<u32>,
    pub acr_values: Option<String>,
}

/// A login option that is malformed; the message names the parameter, never its value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidLoginOption(pub String);

impl LoginOptions {
    /// Reads the options from a request's query parameters (`values(name)`: every value given
    /// for `name`). Each may be given once; `prompt` must be one of the known values, `max_age`
    /// a non-negative integer of at most 10 digits that fits 32 bits, `login_hint` at most 256
    /// characters without control characters, `acr_values` at most 256 characters of
    /// space-separated visible ASCII.
    pub fn parse(values: impl Fn(&str) -> Vec<String>) -> Result<Self, InvalidLoginOption> {
        let single = |name: &str| -> Result<Option<String>, InvalidLoginOption> {
            let mut all = values(name);
            match all.len() {
                0 => Ok(None),
                1 => Ok(all.pop()),
                _ => Err(InvalidLoginOption(format!(
                    "`{name}` is given more than once"
                ))),
            }
        };
        let prompt = single("prompt")?
            .map(|p| {
                Prompt::parse(&p).ok_or_else(|| {
                    InvalidLoginOption(
                        "`prompt` must be one of none, login, consent, select_account, create"
                            .into(),
                    )
                })
            })
            .transpose()?;
        let login_hint = single("login_hint")?
            .map(|hint| {
                let length = hint.chars().count();
                if length == 0 || length > MAX_HINT_CHARS || hint.chars().any(char::is_control) {
                    Err(InvalidLoginOption(format!(
                        "`login_hint` must be 1 to {MAX_HINT_CHARS} characters without control characters"
                    )))
                } else {
                    Ok(hint)
                }
            })
            .transpose()?;
        let max_age = single("max_age")?
            .map(|age| {
                let digits =
                    !age.is_empty() && age.len() <= 10 && age.bytes().all(|b| b.is_ascii_digit());
                digits
                    .then(|| age.parse::<u32>().ok())
                    .flatten()
                    .ok_or_else(|| {
                        InvalidLoginOption(
                            "`max_age` must be a non-negative integer of seconds".into(),
                        )
                    })
            })
            .transpose()?;
        let acr_values = single("acr_values")?
            .map(|acr| {
                let well_formed = !acr.is_empty()
                    && acr.len() <= MAX_HINT_CHARS
                    && acr.split(' ').all(|value| {
                        !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
                    });
                if well_formed {
                    Ok(acr)
                } else {
                    Err(InvalidLoginOption(format!(
                        "`acr_values` must be up to {MAX_HINT_CHARS} characters of space-separated values"
                    )))
                }
            })
            .transpose()?;
        Ok(LoginOptions {
            prompt,
            login_hint,
            max_age,
            acr_values,
        })
    }

    /// Whether this is a silent login (`prompt=none`).
    pub fn is_silent(&self) -> bool {
        self.prompt == Some(Prompt::None)
    }

    /// The authorization-request parameters these options set.
    pub(crate) fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(prompt) = self.prompt {
            params.push(("prompt", prompt.as_str().to_owned()));
        }
        if let Some(hint) = &self.login_hint {
            params.push(("login_hint", hint.clone()));
        }
        if let Some(age) = self.max_age {
            params.push(("max_age", age.to_string()));
        }
        if let Some(acr) = &self.acr_values {
            params.push(("acr_values", acr.clone()));
        }
        params
    }
}
