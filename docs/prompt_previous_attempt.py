def truncate_number(number: float) -> float:
    return int(number)
