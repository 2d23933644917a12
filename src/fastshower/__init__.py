"""fastshower: fast machine-learned calorimeter showers, validated against Geant4."""

__version__ = "0.1.0"
