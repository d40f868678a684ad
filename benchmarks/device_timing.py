"""What the bench scripts share to time work on a device: waiting for it, and naming it in their reports."""
import torch


def synchronizer(device):
    """A function that waits for the device's queued work (a GPU runs asynchronously); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def device_description(device):
    """"cpu (2 threads)" or "cuda (<GPU name>)", for the first line of a report."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"
