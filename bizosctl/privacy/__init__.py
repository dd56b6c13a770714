"""Privacy: personal data found in free text and masked before it leaves for a model."""
