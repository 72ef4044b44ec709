"""URLconf for the Django adapter test."""

from django.http import HttpResponse
from django.urls import path, re_path


def user(request, user_id):  # type: ignore[no-untyped-def]
    return HttpResponse(f"user {user_id}")


def archive(request, year):  # type: ignore[no-untyped-def]
    return HttpResponse(f"year {year}")


urlpatterns = [
    path("users/<int:user_id>", user),
    re_path(r"^archive/(?P<year>[0-9]{4})/$", archive),
]
