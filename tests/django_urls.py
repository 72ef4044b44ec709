"""URLconf for the Django adapter test."""

from django.http import HttpResponse
from django.urls import path, re_path, register_converter


class FourDigitYear:
    regex = "[0-9]{4}"

    def to_python(self, value):  # type: ignore[no-untyped-def]
        return int(value)

    def to_url(self, value):  # type: ignore[no-untyped-def]
        return f"{value:04d}"


register_converter(FourDigitYear, "yyyy")


def user(request, user_id):  # type: ignore[no-untyped-def]
    return HttpResponse(f"user {user_id}")


def archive(request, year):  # type: ignore[no-untyped-def]
    return HttpResponse(f"year {year}")


def boom(request):  # type: ignore[no-untyped-def]
    raise ValueError("the view failed")


urlpatterns = [
    path("users/<int:user_id>", user),
    path("boom", boom),
    path("healthz", boom),  # the app's own, which our /healthz alias shadows (the adapter warns)
    path("reports/<yyyy:year>/", archive),  # a custom converter: the label says {year}
    re_path(r"^archive/(?P<year>[0-9]{4})/$", archive),
]
