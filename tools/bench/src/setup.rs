//! What every benchmark's setup enum shares: a setup is named in result lines, file names,
//! job-script functions and `--setups`; [`named_setups!`] derives all of these from the enum's
//! `ALL` array and its `name()`.

/// Implements, for a setup enum with an inherent `ALL` array and `fn name(self) -> &'static
/// str`: `shell_name` (the name as a shell word), `from_name`, `Display` (the name) and
/// `FromStr` (the name, or an error listing every name).
macro_rules! named_setups {
    ($setup:ident) => {
        impl $setup {
            /// The setup's name as a shell word: the job script's boot function is `boot_`
            /// and this (a shell function name has no `-`).
            pub fn shell_name(self) -> String {
                self.name().replace('-', "_")
            }

            /// Parses a name.
            pub fn from_name(name: &str) -> Option<$setup> {
                $setup::ALL.into_iter().find(|s| s.name() == name)
            }
        }

        impl std::fmt::Display for $setup {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $setup {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $setup::from_name(s).ok_or_else(|| {
                    let names: Vec<&str> = $setup::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown setup {s:?} ({})", names.join(", "))
                })
            }
        }
    };
}

pub(crate) use named_setups;
