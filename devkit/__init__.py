"""Development only, not installed: local throwaway servers and the demo."""
