use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of England's eight Prevent regions, as the page lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionId {
    NorthWest,
    NorthEast,
    WestMidlands,
    EastMidlands,
    SouthEast,
    SouthWest,
    EastOfEngland,
    London,
}

impl RegionId {
    pub const ALL: [RegionId; 8] = [
        RegionId::NorthWest,
        RegionId::NorthEast,
        RegionId::WestMidlands,
        RegionId::EastMidlands,
        RegionId::SouthEast,
        RegionId::SouthWest,
        RegionId::EastOfEngland,
        RegionId::London,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RegionId::NorthWest => "north-west",
            RegionId::NorthEast => "north-east",
            RegionId::WestMidlands => "west-midlands",
            RegionId::EastMidlands => "east-midlands",
            RegionId::SouthEast => "south-east",
            RegionId::SouthWest => "south-west",
            RegionId::EastOfEngland => "east-of-england",
            RegionId::London => "london",
        }
    }

    /// The ids as a comma-separated list, for error messages.
    pub fn all_ids() -> String {
        Self::ALL.map(RegionId::as_str).join(", ")
    }
}

impl FromStr for RegionId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegionId::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown region id (expected one of {})",
                    RegionId::all_ids()
                )
            })
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_round_trips() {
        for r in RegionId::ALL {
            assert_eq!(r.as_str().parse::<RegionId>(), Ok(r));
        }
        assert!("North-West".parse::<RegionId>().is_err());
    }

    /// A refusal lists every id, so the sender can see what it should have written.
    #[test]
    fn an_unknown_id_is_refused_with_the_list_of_ids() {
        assert_eq!(
            "wales".parse::<RegionId>(),
            Err(
                "unknown region id (expected one of north-west, north-east, west-midlands, \
                 east-midlands, south-east, south-west, east-of-england, london)"
                    .to_string()
            )
        );
    }
}
