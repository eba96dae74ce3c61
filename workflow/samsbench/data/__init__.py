"""Datasets: the AnnData contract, simulation, downloads, preparation and splits."""
