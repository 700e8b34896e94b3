"""Road geometry of the CARLA towns, compiled from OpenDRIVE and shipped as numpy arrays."""

from carla_safe_envs.maps.road import LanePoint, RoadMap, load_town, wrap_angle

__all__ = ["LanePoint", "RoadMap", "load_town", "wrap_angle"]
