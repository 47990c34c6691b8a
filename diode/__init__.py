"""kafka data diode: a one-way appliance that carries Kafka records from OT to IT over UDP."""

__version__ = "0.1.0"
